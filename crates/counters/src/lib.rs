//! Application counters through shared memory.
//!
//! An application publishes a *counter set* — named counters, optionally per instance —
//! as a memory-mapped file in a counters directory, and updates each counter with one
//! atomic operation. The Purveyor host finds the file and serves it as class `app.NAME`.
//! This crate is both sides: [`CounterSet`] (the publisher an application links; it
//! depends on nothing of the host) and [`CounterFile`] (the reader the host uses, which
//! treats every file as untrusted bytes).
//!
//! ```no_run
//! use purveyor_counters::{CounterSet, CounterType, Unit};
//! let set = CounterSet::builder("myservice")
//!     .help("My service")
//!     .counter("requests", CounterType::Counter, Unit::Count, "requests served")
//!     .counter("latency", CounterType::Average, Unit::Microseconds, "time per request")
//!     .create()?;
//! let requests = set.counter("requests")?;
//! let latency = set.average("latency")?;
//! requests.add(1);
//! latency.observe(250);
//! # Ok::<(), purveyor_counters::Error>(())
//! ```
//!
//! The file format is in `docs/counter-file.md`; [`format`] pins it.

pub mod format;
pub mod guard;
mod publish;
mod read;

pub use format::{CounterType, Unit};
pub use publish::{
    Average, Counter, CounterSet, Elapsed, Fraction, Instance, SetBuilder, default_dir,
};
pub use read::{CounterDesc, CounterFile, FileError, InstanceValues, Snapshot, open_untrusted};

/// What went wrong while publishing.
#[derive(Debug)]
pub enum Error {
    /// A name, help text or schema that cannot be published; the message says which.
    Invalid(String),
    /// A file operation failed: what was being done, and the error.
    Io(String, std::io::Error),
    /// Another live process publishes a set of this name.
    Taken { name: String, pid: u32 },
    /// Every instance record is in use.
    Full { set: String, capacity: u32 },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Invalid(m) => f.write_str(m),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Taken { name, pid } => {
                write!(
                    f,
                    "counter set {name} is already published by process {pid}"
                )
            }
            Error::Full { set, capacity } => write!(
                f,
                "counter set {set} has no free instance (capacity {capacity}); remove one or create the set with more"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Whether `name` is a valid set or counter name: `[a-z][a-z0-9_]*`, at most 64 bytes
/// (it becomes part of a class path or a property name).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= format::MAX_NAME
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` if it is not running.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); field 22 is the 20th from here.
    rest.split(' ').nth(19)?.parse().ok()
}
