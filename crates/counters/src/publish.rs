//! The publisher: creates a counter file and hands out handles that update it with one
//! atomic operation each.
//!
//! **Invariants.** The file is written aside and renamed into place complete, so a reader
//! never sees a half-written file; it is never resized. Values are only touched with
//! atomic operations on 8-byte-aligned slots. The instance table is only changed under the
//! set's lock and inside the seqlock (generation odd while it changes); an instance's
//! values are zeroed before it is marked live. A handle keeps its instance (and the
//! mapping) alive, so a slot is never reused while a handle can still write to it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};

use memmap2::MmapMut;

use crate::format::{self, CounterType, HEADER_SIZE, Unit, align_up, header};
use crate::{Error, valid_name};

/// The directory a publisher writes to when not told: `$PURVEYOR_COUNTERS`, else
/// `/run/purveyor/counters` for root, else `$XDG_RUNTIME_DIR/purveyor/counters`, else
/// `/tmp/purveyor-UID/counters`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PURVEYOR_COUNTERS").filter(|d| !d.is_empty()) {
        return dir.into();
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return "/run/purveyor/counters".into();
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(run) => PathBuf::from(run).join("purveyor/counters"),
        None => PathBuf::from(format!("/tmp/purveyor-{uid}/counters")),
    }
}

struct Def {
    name: String,
    kind: CounterType,
    unit: Unit,
    help: String,
}

/// Describes a counter set before it is created.
pub struct SetBuilder {
    name: String,
    help: String,
    counters: Vec<Def>,
    instances: Option<u32>,
    mode: u32,
}

/// A published counter set. Dropping it (and every handle from it) removes the file.
#[derive(Clone)]
pub struct CounterSet {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    path: PathBuf,
    /// The file's inode, so that drop never removes a successor's file.
    inode: u64,
    /// Keeps the mapping alive; all access is through `base`.
    _map: MmapMut,
    base: *mut u8,
    counters: HashMap<String, (CounterType, u32)>,
    stride: usize,
    values_offset: usize,
    instances_offset: usize,
    capacity: u32,
    keyed: bool,
    /// Instance names in use, by record index. Changes to the table happen under it.
    table: Mutex<HashMap<String, u32>>,
}

// SAFETY: `base` points into `map`, which lives as long as `Shared`; all writes through it
// are atomic operations or happen under `table`'s lock (the instance table).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl CounterSet {
    /// Starts describing a set named `name` (`[a-z][a-z0-9_]*`, served as `app.NAME`).
    pub fn builder(name: &str) -> SetBuilder {
        SetBuilder {
            name: name.to_string(),
            help: String::new(),
            counters: Vec::new(),
            instances: None,
            mode: 0o644,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The published file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A one-slot counter (`raw`, `counter`, `delta`) of a set without instances.
    pub fn counter(&self, name: &str) -> Result<Counter, Error> {
        let slot = self.shared.singleton_slot(
            name,
            &[CounterType::Raw, CounterType::Counter, CounterType::Delta],
        )?;
        Ok(Counter(Slot::new(self.shared.clone(), None, 0, slot)))
    }

    /// An `average` counter of a set without instances.
    pub fn average(&self, name: &str) -> Result<Average, Error> {
        let slot = self.shared.singleton_slot(name, &[CounterType::Average])?;
        Ok(Average(Slot::new(self.shared.clone(), None, 0, slot)))
    }

    /// A `fraction` counter of a set without instances.
    pub fn fraction(&self, name: &str) -> Result<Fraction, Error> {
        let slot = self.shared.singleton_slot(name, &[CounterType::Fraction])?;
        Ok(Fraction(Slot::new(self.shared.clone(), None, 0, slot)))
    }

    /// An `elapsed` counter of a set without instances.
    pub fn elapsed(&self, name: &str) -> Result<Elapsed, Error> {
        let slot = self.shared.singleton_slot(name, &[CounterType::Elapsed])?;
        Ok(Elapsed(Slot::new(self.shared.clone(), None, 0, slot)))
    }

    /// Adds an instance named `name` (at most 56 bytes of UTF-8, no control characters),
    /// with every counter at zero. Dropping the returned handle and every counter handle
    /// from it removes the instance.
    pub fn instance(&self, name: &str) -> Result<Instance, Error> {
        let shared = &self.shared;
        if !shared.keyed {
            return Err(Error::Invalid(format!(
                "counter set {} has no instances (create it with `instances(N)`)",
                shared.name
            )));
        }
        if name.is_empty()
            || name.len() > format::INSTANCE_NAME_MAX
            || name.chars().any(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "invalid instance name {name:?}: it must be 1 to {} bytes with no control characters",
                format::INSTANCE_NAME_MAX
            )));
        }
        let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.contains_key(name) {
            return Err(Error::Invalid(format!(
                "counter set {} already has an instance {name:?}",
                shared.name
            )));
        }
        let used: std::collections::HashSet<u32> = table.values().copied().collect();
        let Some(index) = (0..shared.capacity).find(|i| !used.contains(i)) else {
            return Err(Error::Full {
                set: shared.name.clone(),
                capacity: shared.capacity,
            });
        };
        shared.change_table(|| {
            // Zero the values first, then name and mark the record live.
            for slot in 0..shared.stride {
                shared.value(index, slot).store(0, Ordering::Relaxed);
            }
            let rec = shared.record(index);
            // SAFETY: the record is inside the mapping; the table lock is held.
            unsafe {
                let name_at = rec.add(format::instance::NAME);
                std::ptr::write_bytes(name_at, 0, format::INSTANCE_NAME_MAX);
                std::ptr::copy_nonoverlapping(name.as_ptr(), name_at, name.len());
            }
            shared
                .u32_at(rec, format::instance::NAME_LEN)
                .store(name.len() as u32, Ordering::Relaxed);
            shared
                .u32_at(rec, format::instance::STATE)
                .store(format::INSTANCE_LIVE, Ordering::Relaxed);
        });
        table.insert(name.to_string(), index);
        Ok(Instance {
            inner: Arc::new(InstanceInner {
                shared: shared.clone(),
                index,
                name: name.to_string(),
            }),
        })
    }
}

impl SetBuilder {
    pub fn help(mut self, help: &str) -> Self {
        self.help = help.to_string();
        self
    }

    /// Adds a counter.
    pub fn counter(mut self, name: &str, kind: CounterType, unit: Unit, help: &str) -> Self {
        self.counters.push(Def {
            name: name.to_string(),
            kind,
            unit,
            help: help.to_string(),
        });
        self
    }

    /// Gives the set instances (keyed by name), with room for `capacity` at a time.
    pub fn instances(mut self, capacity: u32) -> Self {
        self.instances = Some(capacity);
        self
    }

    /// The file's permissions (default 0644: every local user may read the counters).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Publishes the set in [`default_dir`], creating the directory if needed.
    pub fn create(self) -> Result<CounterSet, Error> {
        let dir = default_dir();
        self.create_in(&dir)
    }

    /// Publishes the set in `dir` as `NAME.counters`.
    pub fn create_in(self, dir: &Path) -> Result<CounterSet, Error> {
        self.check()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(format!("{}.counters", self.name));
        if let Some(pid) = live_publisher(&path) {
            return Err(Error::Taken {
                name: self.name,
                pid,
            });
        }

        // Layout.
        let mut strings = Vec::new();
        let mut put = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            (at, s.len() as u32)
        };
        let set_name = put(&self.name);
        let set_help = put(&self.help);
        let mut slot = 0u32;
        let mut descs = Vec::new();
        let mut counters = HashMap::new();
        for def in &self.counters {
            let name = put(&def.name);
            let help = put(&def.help);
            descs.push((name, help, def.kind, def.unit, slot));
            counters.insert(def.name.clone(), (def.kind, slot));
            slot += def.kind.slots();
        }
        let stride = align_up(slot.max(1) as usize, 8);
        let capacity = self.instances.unwrap_or(1);
        let strings_offset = HEADER_SIZE;
        let counters_offset = align_up(strings_offset + strings.len(), 8);
        let instances_offset = counters_offset + descs.len() * format::COUNTER_SIZE;
        let values_offset = align_up(
            instances_offset + capacity as usize * format::INSTANCE_SIZE,
            format::VALUES_ALIGN,
        );
        let size = values_offset + capacity as usize * stride * 8;
        if size as u64 > format::MAX_FILE {
            return Err(Error::Invalid(format!(
                "counter set {} would need {size} bytes, more than the limit of {}",
                self.name,
                format::MAX_FILE
            )));
        }

        // Write aside, then rename into place.
        let pid = std::process::id();
        let aside = dir.join(format!(".{}.{pid}.tmp", self.name));
        let _ = std::fs::remove_file(&aside);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(self.mode)
            .open(&aside)
            .map_err(|e| Error::Io(format!("cannot create {}", aside.display()), e))?;
        let io = |what: &str, e| Error::Io(format!("{what} {}", aside.display()), e);
        // The umask may have narrowed the mode; the caller asked for this one.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(self.mode))
            .map_err(|e| io("cannot set the mode of", e))?;
        file.set_len(size as u64)
            .map_err(|e| io("cannot size", e))?;
        // SAFETY: the file is ours, new, and never resized; the mapping lives in `Shared`.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| io("cannot map", e))?;
        {
            let b = &mut map[..];
            let mut w32 = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            w32(header::VERSION, format::VERSION);
            w32(header::HEADER_SIZE, HEADER_SIZE as u32);
            w32(header::CREATOR_PID, pid);
            w32(
                header::FLAGS,
                if self.instances.is_some() {
                    format::FLAG_INSTANCES
                } else {
                    0
                },
            );
            w32(header::STRINGS_OFFSET, strings_offset as u32);
            w32(header::STRINGS_SIZE, strings.len() as u32);
            w32(header::COUNTERS_OFFSET, counters_offset as u32);
            w32(header::COUNTER_COUNT, descs.len() as u32);
            w32(header::INSTANCES_OFFSET, instances_offset as u32);
            w32(header::INSTANCE_CAPACITY, capacity);
            w32(header::VALUES_OFFSET, values_offset as u32);
            w32(header::SLOTS_PER_INSTANCE, stride as u32);
            w32(header::NAME_OFFSET, set_name.0);
            w32(header::NAME_LEN, set_name.1);
            w32(header::HELP_OFFSET, set_help.0);
            w32(header::HELP_LEN, set_help.1);
            for (i, (name, help, _, _, slot)) in descs.iter().enumerate() {
                let at = counters_offset + i * format::COUNTER_SIZE;
                w32(at + format::counter::NAME_OFFSET, name.0);
                w32(at + format::counter::NAME_LEN, name.1);
                w32(at + format::counter::HELP_OFFSET, help.0);
                w32(at + format::counter::HELP_LEN, help.1);
                w32(at + format::counter::SLOT, *slot);
            }
            for (i, (_, _, kind, unit, _)) in descs.iter().enumerate() {
                let at = counters_offset + i * format::COUNTER_SIZE;
                b[at + format::counter::KIND] = *kind as u8;
                b[at + format::counter::UNIT] = *unit as u8;
            }
            let start = crate::process_start(pid).unwrap_or(0);
            b[header::CREATOR_START..header::CREATOR_START + 8]
                .copy_from_slice(&start.to_le_bytes());
            b[header::FILE_SIZE..header::FILE_SIZE + 8]
                .copy_from_slice(&(size as u64).to_le_bytes());
            b[strings_offset..strings_offset + strings.len()].copy_from_slice(&strings);
            if self.instances.is_none() {
                // The one unnamed instance of a set without instances.
                let rec = instances_offset;
                b[rec..rec + 4].copy_from_slice(&format::INSTANCE_LIVE.to_le_bytes());
            }
            // The magic last: a file with a zero magic is not a counter file yet.
            b[header::MAGIC..header::MAGIC + 8].copy_from_slice(&format::MAGIC);
        }
        std::fs::rename(&aside, &path).map_err(|e| {
            let _ = std::fs::remove_file(&aside);
            Error::Io(
                format!("cannot rename {} to {}", aside.display(), path.display()),
                e,
            )
        })?;
        let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
        let base = map.as_mut_ptr();
        Ok(CounterSet {
            shared: Arc::new(Shared {
                name: self.name,
                path,
                inode,
                _map: map,
                base,
                counters,
                stride,
                values_offset,
                instances_offset,
                capacity,
                keyed: self.instances.is_some(),
                table: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn check(&self) -> Result<(), Error> {
        if !valid_name(&self.name) {
            return Err(Error::Invalid(format!(
                "invalid counter set name {:?}: use [a-z][a-z0-9_]*, at most {} bytes",
                self.name,
                format::MAX_NAME
            )));
        }
        if self.counters.is_empty() {
            return Err(Error::Invalid(format!(
                "counter set {} has no counters",
                self.name
            )));
        }
        if self.counters.len() > format::MAX_COUNTERS as usize {
            return Err(Error::Invalid(format!(
                "counter set {} has {} counters; the limit is {}",
                self.name,
                self.counters.len(),
                format::MAX_COUNTERS
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for def in &self.counters {
            if !valid_name(&def.name) {
                return Err(Error::Invalid(format!(
                    "invalid counter name {:?} in set {}: use [a-z][a-z0-9_]*, at most {} bytes",
                    def.name,
                    self.name,
                    format::MAX_NAME
                )));
            }
            if def.name == "instance" {
                return Err(Error::Invalid(format!(
                    "counter name \"instance\" in set {} is reserved for the instance key",
                    self.name
                )));
            }
            if !seen.insert(def.name.as_str()) {
                return Err(Error::Invalid(format!(
                    "counter {} is listed twice in set {}",
                    def.name, self.name
                )));
            }
            if def.help.len() > format::MAX_HELP {
                return Err(Error::Invalid(format!(
                    "the help of counter {} is longer than {} bytes",
                    def.name,
                    format::MAX_HELP
                )));
            }
        }
        if self.help.len() > format::MAX_HELP {
            return Err(Error::Invalid(format!(
                "the help of set {} is longer than {} bytes",
                self.name,
                format::MAX_HELP
            )));
        }
        if let Some(capacity) = self.instances
            && !(1..=format::MAX_INSTANCES).contains(&capacity)
        {
            return Err(Error::Invalid(format!(
                "counter set {} asks for {capacity} instances; allowed are 1 to {}",
                self.name,
                format::MAX_INSTANCES
            )));
        }
        Ok(())
    }
}

/// The pid of a live process that published `path`, if one does.
fn live_publisher(path: &Path) -> Option<u32> {
    let file = File::open(path).ok()?;
    // SAFETY: read-only view of a file we only inspect; see `CounterFile` for the rules.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    if map.len() < HEADER_SIZE || map[..8] != format::MAGIC {
        return None;
    }
    let pid = u32::from_le_bytes(
        map[header::CREATOR_PID..header::CREATOR_PID + 4]
            .try_into()
            .ok()?,
    );
    let start = u64::from_le_bytes(
        map[header::CREATOR_START..header::CREATOR_START + 8]
            .try_into()
            .ok()?,
    );
    let now = crate::process_start(pid)?;
    (start == 0 || now == start).then_some(pid)
}

impl Shared {
    fn singleton_slot(&self, name: &str, kinds: &[CounterType]) -> Result<u32, Error> {
        if self.keyed {
            return Err(Error::Invalid(format!(
                "counter set {} has instances: take counter {name} from an instance",
                self.name
            )));
        }
        self.slot_of(name, kinds)
    }

    fn slot_of(&self, name: &str, kinds: &[CounterType]) -> Result<u32, Error> {
        match self.counters.get(name) {
            Some((kind, slot)) if kinds.contains(kind) => Ok(*slot),
            Some((kind, _)) => Err(Error::Invalid(format!(
                "counter {name} of set {} is of type {}, not {}",
                self.name,
                kind.as_str(),
                kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
            None => Err(Error::Invalid(format!(
                "counter set {} has no counter {name}",
                self.name
            ))),
        }
    }

    fn record(&self, index: u32) -> *mut u8 {
        // SAFETY: index < capacity, so the record is inside the mapping.
        unsafe {
            self.base
                .add(self.instances_offset + index as usize * format::INSTANCE_SIZE)
        }
    }

    fn u32_at(&self, at: *mut u8, offset: usize) -> &AtomicU32 {
        // SAFETY: every caller passes a 4-aligned field inside the mapping, which outlives
        // `&self`.
        unsafe { &*at.add(offset).cast::<AtomicU32>() }
    }

    fn generation(&self) -> &AtomicU64 {
        // SAFETY: the header's generation field is 8-aligned (the mapping is page-aligned).
        unsafe { &*self.base.add(header::GENERATION).cast::<AtomicU64>() }
    }

    fn value(&self, index: u32, slot: usize) -> &AtomicU64 {
        debug_assert!(index < self.capacity && slot < self.stride);
        // SAFETY: inside the values area, 8-aligned (values_offset is 64-aligned).
        unsafe {
            &*self
                .base
                .add(self.values_offset + (index as usize * self.stride + slot) * 8)
                .cast::<AtomicU64>()
        }
    }

    /// Runs `f` inside the seqlock; the caller holds the table lock.
    fn change_table(&self, f: impl FnOnce()) {
        let g = self.generation();
        let before = g.load(Ordering::Relaxed);
        g.store(before.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        f();
        g.store(before.wrapping_add(2), Ordering::Release);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An instance of a set; its counters are taken from it.
#[derive(Clone)]
pub struct Instance {
    inner: Arc<InstanceInner>,
}

struct InstanceInner {
    shared: Arc<Shared>,
    index: u32,
    name: String,
}

impl Drop for InstanceInner {
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
        shared.change_table(|| {
            shared
                .u32_at(shared.record(self.index), format::instance::STATE)
                .store(format::INSTANCE_FREE, Ordering::Relaxed);
        });
        table.remove(&self.name);
    }
}

impl Instance {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn slot(&self, name: &str, kinds: &[CounterType]) -> Result<Slot, Error> {
        let s = &self.inner.shared;
        let slot = s.slot_of(name, kinds)?;
        Ok(Slot::new(
            s.clone(),
            Some(self.inner.clone()),
            self.inner.index,
            slot,
        ))
    }

    pub fn counter(&self, name: &str) -> Result<Counter, Error> {
        self.slot(
            name,
            &[CounterType::Raw, CounterType::Counter, CounterType::Delta],
        )
        .map(Counter)
    }

    pub fn average(&self, name: &str) -> Result<Average, Error> {
        self.slot(name, &[CounterType::Average]).map(Average)
    }

    pub fn fraction(&self, name: &str) -> Result<Fraction, Error> {
        self.slot(name, &[CounterType::Fraction]).map(Fraction)
    }

    pub fn elapsed(&self, name: &str) -> Result<Elapsed, Error> {
        self.slot(name, &[CounterType::Elapsed]).map(Elapsed)
    }
}

/// Where a handle writes: one or two slots, and what keeps them valid.
#[derive(Clone)]
struct Slot {
    first: *const AtomicU64,
    _set: Arc<Shared>,
    _instance: Option<Arc<InstanceInner>>,
}

// SAFETY: the pointer is into the mapping that `_set` keeps alive; it is only used for
// atomic operations.
unsafe impl Send for Slot {}
// SAFETY: as above.
unsafe impl Sync for Slot {}

impl Slot {
    fn new(set: Arc<Shared>, instance: Option<Arc<InstanceInner>>, index: u32, slot: u32) -> Self {
        let first: *const AtomicU64 = set.value(index, slot as usize);
        Slot {
            first,
            _set: set,
            _instance: instance,
        }
    }

    fn at(&self, i: usize) -> &AtomicU64 {
        // SAFETY: `i` is 0 or 1, within the counter's slots (checked by its type).
        unsafe { &*self.first.add(i) }
    }
}

/// A one-slot counter: `raw` (set it), `counter` or `delta` (add to it).
#[derive(Clone)]
pub struct Counter(Slot);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.at(0).fetch_add(n, Ordering::Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// Sets the value (for `raw` counters, which are gauges).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.at(0).store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.at(0).load(Ordering::Relaxed)
    }
}

/// An `average` counter: a sum and a count.
#[derive(Clone)]
pub struct Average(Slot);

impl Average {
    /// Records one operation that measured `value` (adds it to the sum, one to the count).
    #[inline]
    pub fn observe(&self, value: u64) {
        self.0.at(0).fetch_add(value, Ordering::Relaxed);
        self.0.at(1).fetch_add(1, Ordering::Relaxed);
    }
}

/// A `fraction` counter: a value over a base.
#[derive(Clone)]
pub struct Fraction(Slot);

impl Fraction {
    #[inline]
    pub fn set(&self, value: u64, base: u64) {
        self.0.at(0).store(value, Ordering::Relaxed);
        self.0.at(1).store(base, Ordering::Relaxed);
    }
    /// Adds to both (hits and lookups: `add(hit as u64, 1)`).
    #[inline]
    pub fn add(&self, value: u64, base: u64) {
        self.0.at(0).fetch_add(value, Ordering::Relaxed);
        self.0.at(1).fetch_add(base, Ordering::Relaxed);
    }
}

/// An `elapsed` counter: a moment, in nanoseconds since the Unix epoch.
#[derive(Clone)]
pub struct Elapsed(Slot);

impl Elapsed {
    /// Marks now as the moment elapsed time counts from.
    pub fn start_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.set(now);
    }
    pub fn set(&self, nanos_since_epoch: u64) {
        self.0.at(0).store(nanos_since_epoch, Ordering::Relaxed);
    }
}
