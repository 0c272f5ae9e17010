//! The registry: procedures by four-character code, per process and global, with the
//! documented lookup order (`docs/io-procedures.md`).

use std::io::SeekFrom;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::builtin::{Dos, Gzip, Memory, Tar};
use crate::{FourCC, IoError, IoName, IoProcedure, IoStream, OpenMode, Requester};

/// Where an installed procedure is visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Installed by this process: looked up first.
    Process,
    /// Installed for every client of the host (a provider's manifest lists it).
    Global,
    /// Compiled in: looked up last, never removed.
    Builtin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Process => "process",
            Scope::Global => "global",
            Scope::Builtin => "built-in",
        }
    }
}

/// Procedures that live elsewhere (the host's global ones, seen from a client), consulted
/// after this process's own installs and before the built-ins.
pub trait GlobalProcedures: Send + Sync {
    fn find(&self, code: FourCC) -> Option<Arc<dyn IoProcedure>>;
    /// `(code, origin)` for listings.
    fn list(&self) -> Vec<(FourCC, String)>;
}

struct Entry {
    code: FourCC,
    procedure: Arc<dyn IoProcedure>,
    scope: Scope,
    origin: String,
    open: Arc<AtomicUsize>,
}

/// One line of [`Registry::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub code: FourCC,
    pub scope: Scope,
    /// Who installed it: `built-in`, `library /path/libx.so`, `provider xor`…
    pub origin: String,
    pub description: String,
    pub open_streams: usize,
    /// Whether a later install (or an earlier scope) hides it.
    pub shadowed: bool,
}

/// The I/O procedure registry. Lookup order for a code: this registry's process-scope
/// installs, most recent first; then its global-scope installs, most recent first; then
/// the [`GlobalProcedures`] source, if any; then the built-ins.
pub struct Registry {
    /// In install order; lookups go from the end.
    entries: Mutex<Vec<Entry>>,
    global: Mutex<Option<Arc<dyn GlobalProcedures>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry with the built-ins `DOS `, `MEM `, `GZ  ` and `TAR `.
    pub fn new() -> Self {
        Self::with_memory(Arc::new(Memory::default()))
    }

    /// [`Registry::new`], with `memory` as its `MEM ` (a host sets its limits and sweeps it).
    pub fn with_memory(memory: Arc<Memory>) -> Self {
        let registry = Self::empty();
        for (code, procedure) in [
            ("DOS ", Arc::new(Dos) as Arc<dyn IoProcedure>),
            ("MEM ", memory),
            ("GZ  ", Arc::new(Gzip)),
            ("TAR ", Arc::new(Tar)),
        ] {
            let code = FourCC::new(code).expect("built-in codes are valid");
            registry.install_in(code, procedure, Scope::Builtin, "built-in");
        }
        registry
    }

    /// A registry with nothing in it (not even `DOS `).
    pub fn empty() -> Self {
        Registry {
            entries: Mutex::new(Vec::new()),
            global: Mutex::new(None),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs a procedure for this process. It wins over every earlier install of the
    /// code and over the built-in, until it is removed.
    pub fn install(&self, code: FourCC, procedure: Arc<dyn IoProcedure>) {
        self.install_in(code, procedure, Scope::Process, "installed");
    }

    /// Installs with an explicit scope and origin (what the host and libraries use).
    pub fn install_in(
        &self,
        code: FourCC,
        procedure: Arc<dyn IoProcedure>,
        scope: Scope,
        origin: impl Into<String>,
    ) {
        self.entries().push(Entry {
            code,
            procedure,
            scope,
            origin: origin.into(),
            open: Arc::new(AtomicUsize::new(0)),
        });
    }

    /// Sets where global procedures come from (a client's connection to the host).
    pub fn set_global(&self, global: Option<Arc<dyn GlobalProcedures>>) {
        *self.global.lock().unwrap_or_else(PoisonError::into_inner) = global;
    }

    /// Removes the install of `code` that lookups find now (the most recent process-scope
    /// one, else the most recent global-scope one). Refused while it has open streams, and
    /// for a built-in.
    pub fn remove(&self, code: FourCC) -> Result<(), IoError> {
        let mut entries = self.entries();
        // The install that lookups find now: process scope first, then global.
        let at = [Scope::Process, Scope::Global]
            .into_iter()
            .find_map(|scope| {
                entries
                    .iter()
                    .rposition(|e| e.code == code && e.scope == scope)
            });
        let Some(at) = at else {
            return Err(if entries.iter().any(|e| e.code == code) {
                IoError::BuiltIn(code)
            } else {
                IoError::NoProcedure(code)
            });
        };
        let open = entries[at].open.load(Ordering::Acquire);
        if open > 0 {
            return Err(IoError::Busy { code, open });
        }
        entries.remove(at);
        Ok(())
    }

    /// The procedure `code` resolves to now, with its scope.
    pub fn find(&self, code: FourCC) -> Option<(Arc<dyn IoProcedure>, Scope)> {
        let (procedure, scope, open) = self.resolve(code)?;
        drop(OpenGuard(open));
        Some((procedure, scope))
    }

    fn resolve(&self, code: FourCC) -> Option<(Arc<dyn IoProcedure>, Scope, Arc<AtomicUsize>)> {
        {
            let entries = self.entries();
            for scope in [Scope::Process, Scope::Global] {
                if let Some(e) = entries
                    .iter()
                    .rev()
                    .find(|e| e.code == code && e.scope == scope)
                {
                    // Counted as open before the lock is released, so a remove that
                    // races with this open sees it.
                    e.open.fetch_add(1, Ordering::AcqRel);
                    return Some((e.procedure.clone(), e.scope, e.open.clone()));
                }
            }
        }
        let global = self
            .global
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(procedure) = global.and_then(|g| g.find(code)) {
            return Some((procedure, Scope::Global, Arc::new(AtomicUsize::new(1))));
        }
        let entries = self.entries();
        let e = entries
            .iter()
            .rev()
            .find(|e| e.code == code && e.scope == Scope::Builtin)?;
        e.open.fetch_add(1, Ordering::AcqRel);
        Some((e.procedure.clone(), e.scope, e.open.clone()))
    }

    /// Opens a name: `file.EXT+element` through the procedure for `EXT `, a plain name
    /// through `DOS `.
    pub fn open(&self, name: &str, mode: OpenMode) -> Result<Stream, IoError> {
        self.open_name(&IoName::parse(name)?, mode)
    }

    /// Opens an already parsed name, for this process.
    pub fn open_name(&self, name: &IoName, mode: OpenMode) -> Result<Stream, IoError> {
        self.open_name_for(&Requester::this_process(), name, mode)
    }

    /// Opens an already parsed name for `who` (a host serving a client; see
    /// [`IoProcedure::open_for`]).
    pub fn open_name_for(
        &self,
        who: &Requester,
        name: &IoName,
        mode: OpenMode,
    ) -> Result<Stream, IoError> {
        let code = Self::code_of(name);
        let (procedure, scope, open) = self.resolve(code).ok_or(IoError::NoProcedure(code))?;
        let guard = OpenGuard(open);
        let inner = procedure.open_for(who, name, mode)?;
        Ok(Stream {
            inner: Some(inner),
            name: name.to_string(),
            code,
            scope,
            _guard: guard,
        })
    }

    /// The code a name routes to: its extension's, or `DOS ` for a plain name.
    fn code_of(name: &IoName) -> FourCC {
        name.code
            .unwrap_or_else(|| FourCC::new("DOS ").expect("valid"))
    }

    fn procedure_for(&self, name: &IoName) -> Result<Arc<dyn IoProcedure>, IoError> {
        let code = Self::code_of(name);
        self.find(code)
            .map(|(procedure, _)| procedure)
            .ok_or(IoError::NoProcedure(code))
    }

    /// Renames within one procedure (both names must route to the same code).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), IoError> {
        let (from, to) = (IoName::parse(from)?, IoName::parse(to)?);
        if Self::code_of(&from) != Self::code_of(&to) {
            return Err(IoError::Invalid(format!(
                "cannot rename {from} to {to}: they belong to different I/O procedures"
            )));
        }
        self.procedure_for(&from)?
            .rename_for(&Requester::this_process(), &from, &to)
    }

    pub fn delete(&self, name: &str) -> Result<(), IoError> {
        let name = IoName::parse(name)?;
        self.procedure_for(&name)?
            .delete_for(&Requester::this_process(), &name)
    }

    /// Every install, most recent first within each scope, in lookup order.
    pub fn list(&self) -> Vec<Listing> {
        let mut out: Vec<Listing> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let entries = self.entries();
        let mut push = |code: FourCC, scope, origin: &str, description: String, open| {
            out.push(Listing {
                code,
                scope,
                origin: origin.to_owned(),
                description,
                open_streams: open,
                shadowed: !seen.insert(code),
            });
        };
        for scope in [Scope::Process, Scope::Global] {
            for e in entries.iter().rev().filter(|e| e.scope == scope) {
                let open = e.open.load(Ordering::Relaxed);
                push(e.code, scope, &e.origin, e.procedure.describe(), open);
            }
            if scope == Scope::Global {
                let global = self
                    .global
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                for (code, origin) in global.map(|g| g.list()).unwrap_or_default() {
                    push(code, Scope::Global, &origin, String::new(), 0);
                }
            }
        }
        for e in entries.iter().rev().filter(|e| e.scope == Scope::Builtin) {
            let open = e.open.load(Ordering::Relaxed);
            push(
                e.code,
                Scope::Builtin,
                &e.origin,
                e.procedure.describe(),
                open,
            );
        }
        out
    }

    /// Loads a procedure library and calls its install function, which installs its
    /// procedures here (process scope). Returns the codes it installed.
    pub fn install_from_library(&self, path: &Path) -> Result<Vec<FourCC>, IoError> {
        self.install_library_in(path, Scope::Process)
    }

    /// [`Registry::install_from_library`] with a scope (the host installs globally).
    pub fn install_library_in(&self, path: &Path, scope: Scope) -> Result<Vec<FourCC>, IoError> {
        let procedures = crate::abi::load_library(path)?;
        let origin = format!("library {}", path.display());
        let codes = procedures.iter().map(|(c, _)| *c).collect();
        for (code, procedure) in procedures {
            self.install_in(code, procedure, scope, origin.clone());
        }
        Ok(codes)
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open stream. Implements `Read`, `Write` and `Seek`; [`Stream::close`] finishes it
/// and reports what the procedure says (dropping it without closing discards that).
pub struct Stream {
    inner: Option<Box<dyn IoStream>>,
    name: String,
    code: FourCC,
    scope: Scope,
    _guard: OpenGuard,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .field("code", &self.code)
            .field("scope", &self.scope)
            .finish()
    }
}

impl Stream {
    fn inner(&mut self) -> &mut Box<dyn IoStream> {
        self.inner
            .as_mut()
            .expect("a stream is only taken by close")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn code(&self) -> FourCC {
        self.code
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    pub fn size(&self) -> Option<u64> {
        self.inner.as_ref().and_then(|s| s.size())
    }

    /// The procedure's own stream.
    pub fn procedure_stream(&mut self) -> &mut dyn IoStream {
        &mut **self.inner()
    }

    /// A custom message (see [`crate::message::USER`]).
    pub fn message(&mut self, message: u32, input: &[u8]) -> Result<i64, IoError> {
        self.inner().message(message, input)
    }

    /// Write-flush.
    pub fn write_flush(&mut self, data: &[u8]) -> Result<(), IoError> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.inner().write(rest)?;
            if n == 0 {
                return Err(IoError::Failed(format!(
                    "{}: write made no progress",
                    self.name
                )));
            }
            rest = &rest[n..];
        }
        self.inner().flush()
    }

    /// Finishes the stream: a compressor writes its trailer, an archive its member.
    pub fn close(mut self) -> Result<(), IoError> {
        match self.inner.take() {
            Some(inner) => inner.close(),
            None => Ok(()),
        }
    }

    /// Takes the procedure's stream out (the host keeps it in its own table).
    pub fn into_parts(self) -> (Box<dyn IoStream>, StreamGuard) {
        let Stream { inner, _guard, .. } = self;
        let inner = inner.expect("a stream is only taken by close, which consumes it");
        (inner, StreamGuard(_guard))
    }
}

/// Keeps a stream counted as open (so its procedure cannot be removed) after
/// [`Stream::into_parts`].
pub struct StreamGuard(#[allow(dead_code)] OpenGuard);

impl std::io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.inner().read(buf)?)
    }
}

impl std::io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.inner().write(buf)?)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(self.inner().flush()?)
    }
}

impl std::io::Seek for Stream {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        Ok(self.inner().seek(pos)?)
    }
}
