//! PCP Memory Mapped Values files (versions 1 to 3, as written by PCP's libpcp_mmv and
//! its ports), served read-only so applications instrumented for Performance Co-Pilot
//! appear without change.
//!
//! A file `NAME` becomes class `app.NAME` (its metrics without an instance domain) and
//! `app.NAME.indomN` (the metrics of instance domain N, keyed by `instance`). Metric
//! names become property names: lower case, `.` and other characters outside
//! `[a-z0-9_]` become `_`. PCP semantics map to ours (counter → counter, instant → gauge,
//! discrete → discrete; strings are always discrete), and units from the metric's
//! dimension where they have an equivalent (bytes, ns/µs/ms/s, count).
//!
//! Like counter files, an MMV file is untrusted: every offset and count is checked
//! before use (`open`), values are read with 8-byte atomic loads or 4-byte loads of
//! aligned fields, and a file whose generation numbers disagree (being written) is not
//! read. Layout: PCP's `mmv_dev.h`, restated in `docs/counter-file.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use purveyor_counters::FileError;
use purveyor_model::{
    ClassPath, ClassSchema, Identifier, Instance, PropertyDef, Semantic, Unit, Value,
};

const HEADER: usize = 40;
const TOC: usize = 16;
const INDOM: usize = 32;
const INSTANCE_V1: usize = 80;
const INSTANCE_V2: usize = 24;
const METRIC_V1: usize = 104;
const METRIC_V2: usize = 48;
const VALUE: usize = 32;
const STRING: usize = 256;
const NAMEMAX: usize = 64;
const MAX_ENTRIES: u64 = 1 << 20;
/// No instance domain: 0 in files written by libpcp_mmv (PM_INDOM_NULL in others).
fn no_indom(indom: u32) -> bool {
    indom == 0 || indom == u32::MAX
}
const FLAG_PROCESS: u32 = 2;

/// A mapped, checked MMV file and the classes it is served as.
pub struct MmvFile {
    path: PathBuf,
    map: purveyor_counters::guard::GuardedMap,
    pub classes: Vec<MmvClass>,
    /// The writer's pid when the file asks for a process check (MMV_FLAG_PROCESS).
    pub process: Option<u32>,
}

pub struct MmvClass {
    pub schema: Arc<ClassSchema>,
    keyed: bool,
    /// Every value of the class: where it is, which property, which instance.
    values: Vec<ValueRef>,
    instance_id: Identifier,
}

struct ValueRef {
    at: usize,
    kind: u32,
    property: Identifier,
    instance: String,
}

struct Metric {
    name: String,
    kind: u32,
    sem: u32,
    units: u32,
    indom: u32,
    help: String,
}

impl MmvFile {
    pub fn open(path: &Path, name: &str) -> Result<MmvFile, FileError> {
        let fail = |problem: String| FileError {
            kind: "PCP MMV file",
            path: path.to_path_buf(),
            problem,
        };
        let (file, meta) = purveyor_counters::open_untrusted(path).map_err(fail)?;
        let len = meta.len();
        if len < HEADER as u64 {
            return Err(fail(format!(
                "truncated: {len} bytes, shorter than the {HEADER}-byte MMV header"
            )));
        }
        if len > purveyor_counters::format::MAX_FILE {
            return Err(fail(format!("oversized: {len} bytes")));
        }
        // A read-only shared mapping of untrusted bytes, guarded against the file
        // shrinking; see the module's rules.
        let map = purveyor_counters::guard::GuardedMap::new(&file).map_err(fail)?;
        let b = map.bytes();
        if &b[..4] != b"MMV\0" {
            return Err(fail("not an MMV file (magic)".into()));
        }
        let r32 = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let r64 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let version = r32(4);
        if !(1..=3).contains(&version) {
            return Err(fail(format!(
                "MMV format version {version}; versions 1 to 3 are read"
            )));
        }
        let (g1, g2) = (r64(8), r64(16));
        if g1 != g2 || g1 == 0 {
            return Err(fail(format!(
                "its generation numbers disagree ({g1} and {g2}): it is being written"
            )));
        }
        let tocs = r32(24);
        let flags = r32(28);
        let process = (flags & FLAG_PROCESS != 0).then(|| r32(32));
        if tocs > 16 || HEADER + tocs as usize * TOC > b.len() {
            return Err(fail(format!("{tocs} table-of-contents entries do not fit")));
        }
        let (inst_size, metric_size) = if version == 1 {
            (INSTANCE_V1, METRIC_V1)
        } else {
            (INSTANCE_V2, METRIC_V2)
        };
        let mut sections: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for t in 0..tocs as usize {
            let at = HEADER + t * TOC;
            let (kind, count, offset) = (r32(at), u64::from(r32(at + 4)), r64(at + 8));
            let size = match kind {
                1 => INDOM,
                2 => inst_size,
                3 => metric_size,
                4 => VALUE,
                5 => STRING,
                6 => continue, // labels (version 3): not served
                other => return Err(fail(format!("unknown section type {other}"))),
            };
            if count > MAX_ENTRIES
                || offset % 8 != 0
                || offset
                    .checked_add(count * size as u64)
                    .is_none_or(|end| end > len)
            {
                return Err(fail(format!(
                    "section {kind} ({count} entries at offset {offset}) lies outside the file's {len} bytes"
                )));
            }
            sections.insert(kind, (offset as usize, count as usize));
        }
        let section = |k: u32| sections.get(&k).copied().unwrap_or((0, 0));
        let string_at = |off: u64| -> Result<String, FileError> {
            if off == 0 {
                return Ok(String::new());
            }
            let (start, count) = section(5);
            let end = start + count * STRING;
            let off = off as usize;
            if off < start || off >= end || !(off - start).is_multiple_of(STRING) {
                return Err(fail(format!(
                    "a string offset {off} is not in the string section"
                )));
            }
            Ok(c_string(&b[off..off + STRING]))
        };

        // Instances: offset → external name.
        let mut instances: BTreeMap<usize, String> = BTreeMap::new();
        let (start, count) = section(2);
        for i in 0..count {
            let at = start + i * inst_size;
            let external = if version == 1 {
                c_string(&b[at + 16..at + 16 + NAMEMAX])
            } else {
                string_at(r64(at + 16))?
            };
            if external.is_empty() || external.chars().any(char::is_control) {
                return Err(fail(format!(
                    "instance {i} has an empty or unprintable name"
                )));
            }
            instances.insert(at, external);
        }
        // Metrics: offset → description.
        let mut metrics: BTreeMap<usize, Metric> = BTreeMap::new();
        let (start, count) = section(3);
        for i in 0..count {
            let at = start + i * metric_size;
            let (raw_name, rest) = if version == 1 {
                (c_string(&b[at..at + NAMEMAX]), at + NAMEMAX)
            } else {
                (string_at(r64(at))?, at + 8)
            };
            let help = string_at(r64(rest + 24))?;
            metrics.insert(
                at,
                Metric {
                    name: property_name(&raw_name).ok_or_else(|| {
                        fail(format!("metric {i} has the unusable name {raw_name:?}"))
                    })?,
                    kind: r32(rest + 4),
                    sem: r32(rest + 8),
                    units: r32(rest + 12),
                    indom: r32(rest + 16),
                    help,
                },
            );
        }
        // Values, grouped by class (instance domain).
        let base = property_name(name)
            .ok_or_else(|| fail(format!("the file name {name:?} cannot name a class")))?;
        let mut by_indom: BTreeMap<u32, (Vec<PropertyDef>, Vec<ValueRef>)> = BTreeMap::new();
        let mut declared: BTreeMap<(u32, String), ()> = BTreeMap::new();
        let (start, count) = section(4);
        for i in 0..count {
            let at = start + i * VALUE;
            let m_off = r64(at + 16) as usize;
            let metric = metrics
                .get(&m_off)
                .ok_or_else(|| fail(format!("value {i} points at no metric (offset {m_off})")))?;
            let i_off = r64(at + 24) as usize;
            let instance = if no_indom(metric.indom) {
                String::new()
            } else {
                instances.get(&i_off).cloned().ok_or_else(|| {
                    fail(format!(
                        "value {i} of metric {} points at no instance",
                        metric.name
                    ))
                })?
            };
            let indom = if no_indom(metric.indom) {
                0
            } else {
                metric.indom
            };
            let (props, values) = by_indom.entry(indom).or_default();
            if declared.insert((indom, metric.name.clone()), ()).is_none() {
                props.push(property(metric).map_err(fail)?);
            }
            values.push(ValueRef {
                at,
                kind: metric.kind,
                property: Identifier::new(&metric.name).map_err(|e| fail(e.to_string()))?,
                instance,
            });
        }
        let instance_id = Identifier::new("instance").expect("valid");
        let mut classes = Vec::new();
        for (indom, (mut props, values)) in by_indom {
            let keyed = indom != 0;
            let path = if keyed {
                format!("app.{base}.indom{indom}")
            } else {
                format!("app.{base}")
            };
            if keyed {
                props.insert(
                    0,
                    PropertyDef::new(
                        "instance",
                        "string",
                        Unit::None,
                        Semantic::Key,
                        "the PCP instance",
                    ),
                );
            }
            let class = ClassPath::new(path).map_err(|e| fail(e.to_string()))?;
            let schema =
                ClassSchema::new(class, format!("PCP MMV file {name}"), props, vec![], vec![])
                    .map_err(|e| fail(format!("its metrics do not make a valid class: {e}")))?;
            classes.push(MmvClass {
                schema: Arc::new(schema),
                keyed,
                values,
                instance_id: instance_id.clone(),
            });
        }
        Ok(MmvFile {
            path: path.to_path_buf(),
            map,
            classes,
            process,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn generation(&self) -> (u64, u64) {
        // SAFETY: offsets 8 and 16 are 8-aligned and inside the checked header.
        unsafe {
            (
                (*self.map.as_ptr().add(8).cast::<AtomicU64>()).load(Ordering::Acquire),
                (*self.map.as_ptr().add(16).cast::<AtomicU64>()).load(Ordering::Acquire),
            )
        }
    }

    /// The instances of class `index`, read now.
    pub fn read(&self, index: usize) -> Result<Vec<Instance>, FileError> {
        let class = &self.classes[index];
        let before = self.generation();
        let mut rows: BTreeMap<&str, Vec<(Identifier, Value)>> = BTreeMap::new();
        for v in &class.values {
            let value = self.value(v);
            rows.entry(&v.instance)
                .or_default()
                .push((v.property.clone(), value));
        }
        if self.generation() != before || before.0 != before.1 {
            return Err(FileError {
                kind: "PCP MMV file",
                path: self.path.clone(),
                problem: "it was rewritten while being read".into(),
            });
        }
        if self.map.faulted() {
            return Err(FileError {
                kind: "PCP MMV file",
                path: self.path.clone(),
                problem: "it shrank while mapped; the file is no longer read".into(),
            });
        }
        Ok(rows
            .into_iter()
            .map(|(name, mut props)| {
                if class.keyed {
                    props.push((class.instance_id.clone(), Value::String(name.to_owned())));
                }
                props.into_iter().collect()
            })
            .collect())
    }

    fn value(&self, v: &ValueRef) -> Value {
        // SAFETY: `at` is an 8-aligned value entry inside the checked values section.
        let (word, half, extra) = unsafe {
            let p = self.map.as_ptr().add(v.at);
            (
                (*p.cast::<AtomicU64>()).load(Ordering::Relaxed),
                (*p.cast::<AtomicU32>()).load(Ordering::Relaxed),
                (*p.add(8).cast::<AtomicU64>()).load(Ordering::Relaxed) as i64,
            )
        };
        match v.kind {
            0 => Value::I64(i64::from(half as i32)),
            1 => Value::U64(u64::from(half)),
            2 => Value::I64(word as i64),
            3 => Value::U64(word),
            4 => Value::F64(f64::from(f32::from_bits(half))),
            5 => Value::F64(f64::from_bits(word)),
            6 => {
                // A string value: `extra` is the offset of its string entry.
                let off = extra as usize;
                let ok = extra > 0 && off.checked_add(STRING).is_some_and(|e| e <= self.map.len());
                Value::String(if ok {
                    c_string(&self.map.bytes()[off..off + STRING])
                } else {
                    String::new()
                })
            }
            9 => {
                // Elapsed time in µs; a running interval stores its start as -start in `extra`.
                let mut t = word as i64;
                if extra < 0 {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64);
                    t = t.saturating_add(now.saturating_add(extra));
                }
                Value::I64(t)
            }
            _ => Value::U64(word),
        }
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&c| c == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// A PCP name as a property or class name: lower case, other characters `_`, a letter
/// first. `None` when nothing usable is left.
fn property_name(raw: &str) -> Option<String> {
    let mut s: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        s.insert_str(0, "m_");
    }
    s.truncate(64);
    (!s.trim_matches('_').is_empty() && s != "m_").then_some(s)
}

fn property(m: &Metric) -> Result<PropertyDef, String> {
    let (ty, numeric) = match m.kind {
        0 | 2 | 9 => ("i64", true),
        1 | 3 => ("u64", true),
        4 | 5 => ("f64", true),
        6 => ("string", false),
        other => return Err(format!("metric {} has unsupported type {other}", m.name)),
    };
    let semantic = match (m.sem, numeric) {
        (1, true) => Semantic::Counter,
        (3, true) => Semantic::Gauge,
        _ => Semantic::Discrete,
    };
    let unit = if m.kind == 9 {
        Unit::Microseconds
    } else {
        unit(m.units)
    };
    Ok(PropertyDef::new(&m.name, ty, unit, semantic, &m.help))
}

/// pmUnits as stored on a little-endian machine: bits 8-11 scaleCount, 12-15 scaleTime,
/// 16-19 scaleSpace, 20-23 dimCount, 24-27 dimTime, 28-31 dimSpace (signed nibbles).
fn unit(u: u32) -> Unit {
    let nib = |shift: u32| ((u >> shift) & 0xf) as u8;
    let (scale_time, scale_space) = (nib(12), nib(16));
    let (dim_count, dim_time, dim_space) = (nib(20), nib(24), nib(28));
    match (dim_space, dim_time, dim_count) {
        (1, 0, 0) if scale_space == 0 => Unit::Bytes,
        (0, 1, 0) => match scale_time {
            0 => Unit::Nanoseconds,
            1 => Unit::Microseconds,
            2 => Unit::Milliseconds,
            3 => Unit::Seconds,
            _ => Unit::None,
        },
        (0, 0, 1) => Unit::Count,
        _ => Unit::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[u8] = include_bytes!("../../../crates/cli/tests/fixtures/mmv/pcp-v1");
    const V2: &[u8] = include_bytes!("../../../crates/cli/tests/fixtures/mmv/pcp-v2");

    #[test]
    fn the_fixtures_read_as_written() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [("one", V1), ("two", V2)] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let file = MmvFile::open(&path, name).unwrap();
            let paths: Vec<&str> = file
                .classes
                .iter()
                .map(|c| c.schema.path().as_str())
                .collect();
            assert_eq!(paths, [format!("app.{name}"), format!("app.{name}.indom1")]);
            let single = file.read(0).unwrap();
            assert_eq!(single[0].get("requests"), Some(&Value::U64(42)));
        }
    }

    /// Random corruption never panics the reader: it opens and reads, or says why not.
    #[test]
    fn fuzzed_mmv_files_never_panic_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("victim");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut opened, mut refused) = (0, 0);
        for round in 0..4000 {
            let mut bytes = if round % 2 == 0 {
                V1.to_vec()
            } else {
                V2.to_vec()
            };
            for _ in 0..(next() % 6 + 1) {
                let at = (next() % bytes.len() as u64) as usize;
                if next() % 2 == 0 {
                    bytes[at] = next() as u8;
                } else {
                    let at = at & !7;
                    let v = [0u64, 8, 40, 0xffff_ffff, u64::MAX, 4096][(next() % 6) as usize];
                    if at + 8 <= bytes.len() {
                        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            if next() % 8 == 0 {
                bytes.truncate((next() % bytes.len() as u64) as usize);
            }
            std::fs::write(&path, &bytes).unwrap();
            match MmvFile::open(&path, "victim") {
                Ok(file) => {
                    for i in 0..file.classes.len() {
                        let _ = file.read(i);
                    }
                    opened += 1;
                }
                Err(_) => refused += 1,
            }
        }
        assert!(
            opened > 0 && refused > 0,
            "opened {opened}, refused {refused}"
        );
    }
}
