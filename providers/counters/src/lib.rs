//! The built-in `counters` provider: every counter file in the counters directories is
//! served as class `app.NAME` (`docs/counter-file.md`).
//!
//! Files are found as they appear and disappear: each directory has an inotify watch
//! (a directory that does not exist yet, one on its nearest existing ancestor); at every
//! request one `poll` of all the watches says which have events, those are drained, and
//! their directories rescanned. A file that cannot be read is logged once, naming the
//! file and the problem, and skipped; the others are served. A file whose publisher has
//! exited is shown with `stale = true` and removed after the grace period.
//!
//! How each counter type becomes properties (the consumer's formulas):
//! - `raw` → `NAME`, a gauge; `counter` → `NAME`, a counter (shown as a rate);
//!   `delta` → `NAME`, a delta (shown as the difference between samples);
//! - `average` → `NAME` (gauge: sum / count since the start; `watch` shows Δsum / Δcount),
//!   `NAME_sum` and `NAME_count` (counters);
//! - `fraction` → `NAME` (gauge, percent: 100 × value / base), `NAME_value`, `NAME_base`;
//! - `elapsed` → `NAME` (gauge, seconds since the stored moment).
//!
//! A file is served to a caller only if its permissions let that caller read it.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use purveyor_counters::{CounterFile, CounterType, FileError};

mod mmv;
use mmv::MmvFile;
use purveyor_model::{ClassPath, ClassSchema, Instance, PropertyDef, Semantic, Unit, Value};
use purveyor_provider::{CallContext, Caller, Provider, ProviderError};

/// Reads a PCP MMV file the way the provider does (checks, then every class's values):
/// the instances it would serve, or the error naming what is wrong. For tests and the
/// fuzz targets; the provider itself keeps files open between reads.
pub fn read_mmv_file(path: &Path) -> Result<Vec<Instance>, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("fuzz");
    let file = MmvFile::open(path, name).map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    for index in 0..file.classes.len() {
        all.extend(file.read(index).map_err(|e| e.to_string())?);
    }
    Ok(all)
}

/// The manifest the host registers this provider with.
pub const MANIFEST: &str = r#"
name = "counters"
description = "Application counter sets published as counter files, as classes app.NAME"
hosting = "builtin"
builtin = "counters"
classes = ["app.*"]
capabilities = ["enumerate", "get"]
kind = "counter"
"#;

/// The namespace counter sets are served in.
pub const NAMESPACE: &str = "app";

/// How often a publisher's liveness is checked (it reads /proc).
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

pub struct AppCounters {
    grace: Duration,
    state: Mutex<State>,
}

struct State {
    dirs: Vec<Dir>,
    /// Directories of PCP MMV files.
    mmv_dirs: Vec<Dir>,
    /// Served MMV files by file name.
    mmv: BTreeMap<String, MmvServed>,
    /// MMV classes by class path: (file name, class index).
    mmv_classes: BTreeMap<String, (String, usize)>,
    /// Served sets by name; the first directory that has a name wins.
    sets: BTreeMap<String, Served>,
    /// Files already reported as unreadable, by path, with their identity and size then,
    /// so each problem is logged once.
    reported: BTreeMap<PathBuf, ((u64, u64), u64)>,
    /// When publishers' liveness is next checked: once per [`LIVENESS_EVERY`] for all
    /// sets, so a request costs the same however many sets there are.
    next_liveness: Instant,
}

/// A watched directory. While it exists, `watch` is on it; while it is missing, `watch` is
/// on its nearest existing ancestor, for entries appearing there, so a quiet directory
/// costs a request nothing but its part of one `poll` either way (before, a missing
/// directory cost a failed watch and a failed scan on every request). With no watch at
/// all (inotify unavailable), every request looks again.
struct Dir {
    path: PathBuf,
    watch: Option<OwnedFd>,
    /// Whether `watch` is on the directory itself (else on an ancestor, or none).
    on_dir: bool,
}

struct MmvServed {
    file: MmvFile,
    identity: (u64, u64),
    size: u64,
    dir: usize,
}

struct Served {
    file: CounterFile,
    identity: (u64, u64),
    dir: usize,
    schema: Arc<ClassSchema>,
    /// Where each property's value comes from, built once.
    layout: Layout,
    gone_since: Option<Instant>,
}

/// Where each property of the class comes from, in the schema's order: an instance is
/// the schema's table of names and one vector of values.
struct Layout {
    sources: Vec<Source>,
}

#[derive(Clone, Copy)]
enum Source {
    Instance,
    Stale,
    /// A slot as is.
    Slot(usize),
    /// sum / count from a slot pair.
    Mean(usize),
    /// 100 × value / base from a slot pair.
    Percent(usize),
    /// Seconds since the nanosecond timestamp in a slot.
    Elapsed(usize),
}

impl AppCounters {
    /// Serves the counter files in `dirs` (the first that has a set name wins) and the PCP
    /// MMV files in `mmv_dirs`. A counter file whose publisher exited is removed `grace`
    /// after that was noticed.
    pub fn new(dirs: Vec<PathBuf>, mmv_dirs: Vec<PathBuf>, grace: Duration) -> Self {
        let watched = |dirs: Vec<PathBuf>| {
            dirs.into_iter()
                .map(|path| Dir {
                    path,
                    watch: None,
                    on_dir: false,
                })
                .collect()
        };
        AppCounters {
            grace,
            state: Mutex::new(State {
                dirs: watched(dirs),
                mmv_dirs: watched(mmv_dirs),
                mmv: BTreeMap::new(),
                mmv_classes: BTreeMap::new(),
                sets: BTreeMap::new(),
                reported: BTreeMap::new(),
                next_liveness: Instant::now(),
            }),
        }
    }

    /// The default directories: `$PURVEYOR_COUNTERS` (colon-separated) if set, else
    /// `$XDG_RUNTIME_DIR/purveyor/counters` then `/run/purveyor/counters`.
    pub fn default_dirs() -> Vec<PathBuf> {
        if let Some(list) = std::env::var_os("PURVEYOR_COUNTERS") {
            return std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
        }
        let mut dirs = Vec::new();
        if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            dirs.push(PathBuf::from(run).join("purveyor/counters"));
        }
        dirs.push(PathBuf::from("/run/purveyor/counters"));
        dirs
    }

    /// The default PCP MMV directories: `$PURVEYOR_MMV` (colon-separated) if set, else
    /// `$PCP_TMP_DIR/mmv`, else `/var/lib/pcp/tmp/mmv` (where PCP's library writes).
    pub fn default_mmv_dirs() -> Vec<PathBuf> {
        if let Some(list) = std::env::var_os("PURVEYOR_MMV") {
            return std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
        }
        match std::env::var_os("PCP_TMP_DIR").filter(|d| !d.is_empty()) {
            Some(tmp) => vec![PathBuf::from(tmp).join("mmv")],
            None => vec![PathBuf::from("/var/lib/pcp/tmp/mmv")],
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.refresh(self.grace);
        f(&mut state)
    }
}

impl Provider for AppCounters {
    fn classes(&self) -> Vec<ClassSchema> {
        self.with_state(|s| {
            let mut all: Vec<ClassSchema> =
                s.sets.values().map(|set| (*set.schema).clone()).collect();
            for (file, index) in s.mmv_classes.values() {
                all.push((*s.mmv[file].file.classes[*index].schema).clone());
            }
            all
        })
    }

    fn schema(&self, class: &ClassPath) -> Option<Arc<ClassSchema>> {
        self.with_state(|s| {
            if let Some(set) = set_name(class).and_then(|n| s.sets.get(n)) {
                return Some(set.schema.clone());
            }
            let (file, index) = s.mmv_classes.get(class.as_str())?;
            Some(s.mmv[file].file.classes[*index].schema.clone())
        })
    }

    fn enumerate(
        &self,
        class: &ClassPath,
        ctx: &CallContext,
    ) -> Result<Vec<Instance>, ProviderError> {
        self.with_state(|s| {
            if let Some(set) = set_name(class).and_then(|name| s.sets.get(name)) {
                set.readable_by(&ctx.caller)?;
                return set.instances();
            }
            let (file, index) = s
                .mmv_classes
                .get(class.as_str())
                .ok_or_else(|| ProviderError::NotFound(format!("no counter set for {class}")))?;
            let served = &s.mmv[file];
            readable(served.file.path(), &ctx.caller)?;
            if let Some(pid) = served.file.process
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                // PCP's MMV agent hides such files too (MMV_FLAG_PROCESS).
                return Err(ProviderError::NotFound(format!(
                    "{class}: the process that wrote {} (pid {pid}) has exited",
                    served.file.path().display()
                )));
            }
            served
                .file
                .read(*index)
                .map_err(|e| ProviderError::Failed(e.to_string()))
        })
    }
}

fn set_name(class: &ClassPath) -> Option<&str> {
    class.as_str().strip_prefix("app.")
}

impl Dir {
    /// Whether the directory must be read again: it was never read, its watch reported a
    /// change, or it was missing and something appeared under its watched ancestor (or
    /// nothing could be watched). Moves the watch between the directory and its ancestor
    /// as the directory comes and goes. `waiting` says whether its watch has events (from
    /// [`waiting`]); a watch without any is not read.
    fn poll(&mut self, waiting: bool) -> bool {
        let fired = |watch: &OwnedFd| waiting && drain(watch);
        if !self.on_dir {
            if !self.watch.as_ref().is_none_or(fired) {
                return false;
            }
            self.arm();
            return true;
        }
        let changed = self.watch.as_ref().is_some_and(fired);
        if changed && !self.path.is_dir() {
            self.arm();
        }
        changed
    }

    /// Watches the directory, or, while it is missing, its nearest existing ancestor.
    fn arm(&mut self) {
        self.watch = None;
        self.on_dir = false;
        // An ancestor watched while a directory below it was being made is not the nearest
        // one any more: look again, a few times, then leave it unwatched (looked at on
        // every request) until the next poll.
        for _ in 0..4 {
            if let Some(fd) = watch(&self.path, DIR_EVENTS) {
                self.watch = Some(fd);
                self.on_dir = true;
                return;
            }
            let Some(ancestor) = nearest_existing(&self.path) else {
                return;
            };
            let Some(fd) = watch(ancestor, ANCESTOR_EVENTS) else {
                return;
            };
            if nearest_existing(&self.path) == Some(ancestor) {
                self.watch = Some(fd);
                return;
            }
        }
    }
}

/// The nearest directory above `path` that exists.
fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors().skip(1).find(|a| a.is_dir())
}

/// Which of `dirs` have events waiting on their watches, found with one `poll` for all of
/// them: a request that finds every directory quiet costs one system call, not a read
/// per directory. A directory without a watch counts as waiting (it is looked at anyway).
fn waiting<'a>(dirs: impl Iterator<Item = &'a Dir>) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = dirs
        .map(|d| libc::pollfd {
            fd: d.watch.as_ref().map_or(-1, |w| w.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a live array of `fds.len()` entries; a zero timeout never blocks.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    fds.iter()
        // A failed poll reads every watch, as before.
        .map(|p| n < 0 || p.fd < 0 || p.revents != 0)
        .collect()
}

impl State {
    /// Brings the served sets up to date with the directories.
    fn refresh(&mut self, grace: Duration) {
        let waiting = waiting(self.dirs.iter().chain(&self.mmv_dirs));
        let (plain, mmv) = waiting.split_at(self.dirs.len());
        for (d, &waiting) in plain.iter().enumerate() {
            if self.dirs[d].poll(waiting) {
                self.scan(d);
            }
        }
        let mut mmv_changed = false;
        for (d, &waiting) in mmv.iter().enumerate() {
            if self.mmv_dirs[d].poll(waiting) {
                self.scan_mmv(d);
                mmv_changed = true;
            }
        }
        if mmv_changed {
            self.mmv_classes =
                self.mmv
                    .iter()
                    .flat_map(|(name, served)| {
                        served.file.classes.iter().enumerate().map(move |(i, c)| {
                            (c.schema.path().as_str().to_owned(), (name.clone(), i))
                        })
                    })
                    .collect();
        }
        let now = Instant::now();
        if now < self.next_liveness {
            return;
        }
        self.next_liveness = now + LIVENESS_EVERY;
        let mut remove = Vec::new();
        for (name, set) in &mut self.sets {
            if !set.file.creator_gone() {
                set.gone_since = None;
                continue;
            }
            let since = *set.gone_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                remove.push(name.clone());
            }
        }
        for name in remove {
            if let Some(set) = self.sets.remove(&name) {
                let path = set.file.path();
                tracing::info!(file = %path.display(), pid = set.file.creator_pid, "removing the counter file of an exited publisher");
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a stale counter file; no longer serving it");
                }
            }
        }
    }

    /// Reads directory `d` again: new and replaced files are opened, vanished ones dropped.
    fn scan(&mut self, d: usize) {
        let dir = self.dirs[d].path.clone();
        let mut present = std::collections::BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".counters"))
                    .map(str::to_owned)
                else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                present.insert(name.clone());
                self.consider(d, &name, &path);
            }
        }
        self.sets
            .retain(|name, set| set.dir != d || present.contains(name));
    }

    /// Reads MMV directory `d` again.
    fn scan_mmv(&mut self, d: usize) {
        use std::os::unix::fs::MetadataExt;
        let dir = self.mmv_dirs[d].path.clone();
        let mut present = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if name.starts_with('.') || !meta.is_file() {
                continue;
            }
            present.insert(name.clone());
            let identity = (meta.dev(), meta.ino());
            if let Some(served) = self.mmv.get(&name)
                && (served.dir < d
                    || (served.dir == d
                        && served.identity == identity
                        && served.size == meta.len()))
            {
                continue;
            }
            if self.reported.get(&path) == Some(&(identity, meta.len())) {
                continue;
            }
            match MmvFile::open(&path, &name) {
                Ok(file) => {
                    tracing::info!(file = %path.display(), classes = file.classes.len(), "serving PCP MMV file");
                    self.reported.remove(&path);
                    self.mmv.insert(
                        name,
                        MmvServed {
                            file,
                            identity,
                            size: meta.len(),
                            dir: d,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PCP MMV file not served");
                    self.reported.insert(path, (identity, meta.len()));
                    self.mmv.remove(&name);
                }
            }
        }
        self.mmv
            .retain(|name, served| served.dir != d || present.contains(name));
    }

    fn consider(&mut self, d: usize, name: &str, path: &Path) {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(_) => return,
        };
        let identity = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        if let Some(set) = self.sets.get(name)
            && (set.dir < d || (set.dir == d && set.identity == identity))
        {
            return;
        }
        if self.reported.get(path) == Some(&(identity, meta.len())) {
            return;
        }
        match open(path, name, d) {
            Ok(served) => {
                tracing::info!(file = %path.display(), class = %served.schema.path(), "serving counter file");
                self.reported.remove(path);
                self.sets.insert(name.to_owned(), served);
            }
            Err(e) => {
                tracing::warn!(error = %e, "counter file not served");
                self.reported
                    .insert(path.to_path_buf(), (identity, meta.len()));
            }
        }
    }
}

fn open(path: &Path, name: &str, dir: usize) -> Result<Served, FileError> {
    let file = CounterFile::open(path)?;
    let fail = |problem: String| FileError {
        kind: "counter file",
        path: path.to_path_buf(),
        problem,
    };
    if file.name != name {
        return Err(fail(format!(
            "it names its set {:?} but the file is named {name}.counters",
            file.name
        )));
    }
    let (schema, layout) = schema_of(&file).map_err(fail)?;
    Ok(Served {
        identity: file.identity(),
        file,
        dir,
        schema: Arc::new(schema),
        layout,
        gone_since: None,
    })
}

fn unit(u: purveyor_counters::Unit) -> Unit {
    use purveyor_counters::Unit as U;
    match u {
        U::None => Unit::None,
        U::Count => Unit::Count,
        U::Bytes => Unit::Bytes,
        U::Seconds => Unit::Seconds,
        U::Milliseconds => Unit::Milliseconds,
        U::Microseconds => Unit::Microseconds,
        U::Nanoseconds => Unit::Nanoseconds,
        U::Percent => Unit::Percent,
        U::Packets => Unit::Packets,
        U::Operations => Unit::Operations,
    }
}

/// The class a counter file is served as, and where its properties come from.
fn schema_of(file: &CounterFile) -> Result<(ClassSchema, Layout), String> {
    let mut props = Vec::new();
    let p = PropertyDef::new;
    if file.keyed {
        props.push(p(
            "instance",
            "string",
            Unit::None,
            Semantic::Key,
            "the instance",
        ));
    }
    let mut sources = Vec::new();
    if file.keyed {
        sources.push(Source::Instance);
    }
    for c in &file.counters {
        let u = unit(c.unit);
        let help = c.help.as_str();
        let mine: Vec<PropertyDef> = match c.kind {
            CounterType::Raw => vec![p(&c.name, "u64", u, Semantic::Gauge, help)],
            CounterType::Counter => vec![p(&c.name, "u64", u, Semantic::Counter, help)],
            CounterType::Delta => vec![p(&c.name, "u64", u, Semantic::Delta, help)],
            CounterType::Average => vec![
                p(&c.name, "f64", u, Semantic::Gauge, help),
                p(
                    &format!("{}_sum", c.name),
                    "u64",
                    u,
                    Semantic::Counter,
                    "the sum of the observations",
                ),
                p(
                    &format!("{}_count", c.name),
                    "u64",
                    Unit::Count,
                    Semantic::Counter,
                    "the number of observations",
                ),
            ],
            CounterType::Fraction => vec![
                p(&c.name, "f64", Unit::Percent, Semantic::Gauge, help),
                p(
                    &format!("{}_value", c.name),
                    "u64",
                    Unit::Count,
                    Semantic::Gauge,
                    "the fraction's value",
                ),
                p(
                    &format!("{}_base", c.name),
                    "u64",
                    Unit::Count,
                    Semantic::Gauge,
                    "the fraction's base",
                ),
            ],
            CounterType::Elapsed => vec![p(&c.name, "f64", Unit::Seconds, Semantic::Gauge, help)],
        };
        let at = c.slot as usize;
        let first = match c.kind {
            CounterType::Raw | CounterType::Counter | CounterType::Delta => Source::Slot(at),
            CounterType::Average => Source::Mean(at),
            CounterType::Fraction => Source::Percent(at),
            CounterType::Elapsed => Source::Elapsed(at),
        };
        sources.push(first);
        if mine.len() == 3 {
            sources.push(Source::Slot(at));
            sources.push(Source::Slot(at + 1));
        }
        props.extend(mine);
    }
    props.push(p(
        "stale",
        "bool",
        Unit::None,
        Semantic::Discrete,
        "the publishing process has exited; the file goes after the grace period",
    ));
    let class = ClassPath::new(format!("{NAMESPACE}.{}", file.name)).map_err(|e| e.to_string())?;
    let schema = ClassSchema::new(class, file.help.clone(), props, vec![], vec![])
        .map_err(|e| format!("its counters do not make a valid class: {e}"))?;
    sources.push(Source::Stale);
    Ok((schema, Layout { sources }))
}

impl Served {
    /// Whether `caller` may read the file, by its owner, group and mode (supplementary
    /// groups are not consulted).
    fn readable_by(&self, caller: &Caller) -> Result<(), ProviderError> {
        let f = &self.file;
        let (uid, gid, mode) = f.access();
        check_access(f.path(), uid, gid, mode, caller)
    }

    fn instances(&self) -> Result<Vec<Instance>, ProviderError> {
        let snap = self
            .file
            .snapshot()
            .map_err(|e| ProviderError::Failed(e.to_string()))?;
        let stale = self.gone_since.is_some();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let out = snap
            .instances
            .into_iter()
            .map(|i| {
                let v = &i.values;
                let mut values = Vec::with_capacity(self.layout.sources.len());
                for source in &self.layout.sources {
                    // Slots (most counters) written in place (`Value::push_u64`).
                    if let Source::Slot(at) = *source {
                        Value::push_u64(&mut values, v[at]);
                        continue;
                    }
                    values.push(match *source {
                        Source::Instance => Value::String(i.name.clone()),
                        Source::Stale => Value::Bool(stale),
                        Source::Slot(at) => Value::U64(v[at]),
                        Source::Mean(at) => Value::F64(ratio(v[at], v[at + 1], 1.0)),
                        Source::Percent(at) => Value::F64(ratio(v[at], v[at + 1], 100.0)),
                        Source::Elapsed(at) => Value::F64(if v[at] == 0 || v[at] > now {
                            0.0
                        } else {
                            (now - v[at]) as f64 / 1e9
                        }),
                    });
                }
                Instance::with_values(self.schema.names(), values)
            })
            .collect();
        Ok(out)
    }
}

/// Whether the file at `path` may be read by `caller`, from its current owner and mode.
fn readable(path: &Path, caller: &Caller) -> Result<(), ProviderError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)
        .map_err(|e| ProviderError::Failed(format!("{}: {e}", path.display())))?;
    check_access(path, m.uid(), m.gid(), m.mode() & 0o7777, caller)
}

/// Root, the owner with 0400, the file's group with 0040, or anyone with 0004 (the
/// caller's primary group only).
fn check_access(
    path: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    caller: &Caller,
) -> Result<(), ProviderError> {
    let allowed = caller.uid == 0
        || (caller.uid == uid && mode & 0o400 != 0)
        || (caller.gid == gid && mode & 0o040 != 0)
        || mode & 0o004 != 0;
    if allowed {
        Ok(())
    } else {
        Err(ProviderError::AccessDenied(format!(
            "counter file {} (owner uid {uid}, gid {gid}, mode {mode:04o}) is not readable by uid {}",
            path.display(),
            caller.uid
        )))
    }
}

/// `scale × a / b`, or 0 when `b` is 0.
fn ratio(a: u64, b: u64, scale: f64) -> f64 {
    if b == 0 {
        0.0
    } else {
        scale * a as f64 / b as f64
    }
}

/// An inotify watch on `dir` for files appearing and disappearing; `None` if the
/// directory does not exist (tried again at the next request).
/// What changes a watched directory's sets.
const DIR_EVENTS: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CLOSE_WRITE
    | libc::IN_ATTRIB
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF;

/// What may make a missing directory appear below a watched ancestor.
const ANCESTOR_EVENTS: u32 =
    libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;

fn watch(dir: &Path, mask: u32) -> Option<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: plain system calls; the descriptor is owned below.
    unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) < 0 {
            return None;
        }
        Some(fd)
    }
}

/// Reads every pending event; true if there was any.
fn drain(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 4096];
    let mut any = false;
    loop {
        // SAFETY: reads into a buffer we own, of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return any;
        }
        any = true;
    }
}
