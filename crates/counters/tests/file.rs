//! The counter file end to end: publish, read, change instances while reading, and refuse
//! hostile files with exact errors (and never panic on any).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use purveyor_counters::format::{self, header};
use purveyor_counters::{CounterFile, CounterSet, CounterType, Error, Unit};

fn all_types(dir: &Path) -> CounterSet {
    CounterSet::builder("shop")
        .help("A shop")
        .counter("queue", CounterType::Raw, Unit::Count, "waiting now")
        .counter("sales", CounterType::Counter, Unit::Count, "sales so far")
        .counter("errors", CounterType::Delta, Unit::Count, "errors")
        .counter(
            "latency",
            CounterType::Average,
            Unit::Microseconds,
            "per sale",
        )
        .counter("hits", CounterType::Fraction, Unit::Percent, "cache hits")
        .counter("up", CounterType::Elapsed, Unit::Seconds, "since start")
        .create_in(dir)
        .unwrap()
}

#[test]
fn every_counter_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let set = all_types(dir.path());
    assert_eq!(set.path(), dir.path().join("shop.counters"));
    set.counter("queue").unwrap().set(7);
    set.counter("sales").unwrap().add(40);
    set.counter("sales").unwrap().inc();
    set.counter("errors").unwrap().add(2);
    let latency = set.average("latency").unwrap();
    latency.observe(100);
    latency.observe(300);
    set.fraction("hits").unwrap().set(3, 4);
    set.elapsed("up").unwrap().set(123);

    let file = CounterFile::open(set.path()).unwrap();
    assert_eq!(file.name, "shop");
    assert_eq!(file.help, "A shop");
    assert!(!file.keyed);
    assert_eq!(file.creator_pid, std::process::id());
    assert!(!file.creator_gone());
    let names: Vec<_> = file.counters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["queue", "sales", "errors", "latency", "hits", "up"]);
    let snap = file.snapshot().unwrap();
    assert_eq!(snap.instances.len(), 1);
    let v = &snap.instances[0].values;
    let at = |name: &str| file.counters.iter().find(|c| c.name == name).unwrap().slot as usize;
    assert_eq!(v[at("queue")], 7);
    assert_eq!(v[at("sales")], 41);
    assert_eq!(v[at("errors")], 2);
    assert_eq!((v[at("latency")], v[at("latency") + 1]), (400, 2));
    assert_eq!((v[at("hits")], v[at("hits") + 1]), (3, 4));
    assert_eq!(v[at("up")], 123);

    // A handle of the wrong type is refused, naming both types.
    match set.counter("latency") {
        Err(Error::Invalid(m)) => assert_eq!(
            m,
            "counter latency of set shop is of type average, not raw or counter or delta"
        ),
        _ => panic!("accepted a counter handle for an average"),
    }
    let path = set.path().to_path_buf();
    drop(set);
    assert!(path.exists(), "a handle keeps the file");
    drop(latency);
    assert!(
        !path.exists(),
        "dropping the set and its handles removes its file"
    );
}

#[test]
fn instances_come_and_go_and_a_slot_is_zeroed_for_its_next_owner() {
    let dir = tempfile::tempdir().unwrap();
    let set = CounterSet::builder("net")
        .counter("bytes", CounterType::Counter, Unit::Bytes, "")
        .instances(2)
        .create_in(dir.path())
        .unwrap();
    assert!(matches!(set.counter("bytes"), Err(Error::Invalid(_))));
    let eth0 = set.instance("eth0").unwrap();
    let lo = set.instance("lo").unwrap();
    eth0.counter("bytes").unwrap().add(10);
    lo.counter("bytes").unwrap().add(20);
    match set.instance("wlan0") {
        Err(e @ Error::Full { .. }) => assert_eq!(
            e.to_string(),
            "counter set net has no free instance (capacity 2); remove one or create the set with more"
        ),
        _ => panic!("a third instance fitted in two"),
    }
    let file = CounterFile::open(set.path()).unwrap();
    let snap = file.snapshot().unwrap();
    let mut got: Vec<_> = snap
        .instances
        .iter()
        .map(|i| (i.name.as_str(), i.values[0]))
        .collect();
    got.sort();
    assert_eq!(got, [("eth0", 10), ("lo", 20)]);

    // A counter handle keeps its instance alive; dropping both removes it.
    let bytes = eth0.counter("bytes").unwrap();
    drop(eth0);
    assert_eq!(file.instances().unwrap().len(), 2);
    drop(bytes);
    let names: Vec<_> = file
        .instances()
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["lo"]);
    let wlan = set.instance("wlan0").unwrap();
    let snap = file.snapshot().unwrap();
    let wlan_values = snap.instances.iter().find(|i| i.name == "wlan0").unwrap();
    assert_eq!(wlan_values.values[0], 0, "a reused slot starts at zero");
    drop(wlan);
}

#[test]
fn a_live_publisher_keeps_its_name_and_a_stale_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let set = all_types(dir.path());
    match CounterSet::builder("shop")
        .counter("x", CounterType::Raw, Unit::None, "")
        .create_in(dir.path())
    {
        Err(Error::Taken { name, pid }) => {
            assert_eq!((name.as_str(), pid), ("shop", std::process::id()));
        }
        _ => panic!("a second publisher took a live set's name"),
    }
    // A file whose creator is gone: fake it by pointing the pid at a process that exited.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = std::fs::read(set.path()).unwrap();
    std::mem::forget(set); // leave the file behind, as a crashed process would
    let mut bytes = stale;
    bytes[header::CREATOR_PID..header::CREATOR_PID + 4].copy_from_slice(&dead.to_le_bytes());
    let path = dir.path().join("shop.counters");
    std::fs::write(&path, &bytes).unwrap();
    assert!(CounterFile::open(&path).unwrap().creator_gone());
    let again = CounterSet::builder("shop")
        .counter("x", CounterType::Raw, Unit::None, "")
        .create_in(dir.path())
        .unwrap();
    assert_eq!(CounterFile::open(again.path()).unwrap().counters.len(), 1);
}

#[test]
fn bad_names_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let err = |b: purveyor_counters::SetBuilder| b.create_in(dir.path()).err().unwrap().to_string();
    assert_eq!(
        err(CounterSet::builder("My-Service").counter("a", CounterType::Raw, Unit::None, "")),
        "invalid counter set name \"My-Service\": use [a-z][a-z0-9_]*, at most 64 bytes"
    );
    assert_eq!(
        err(CounterSet::builder("s")),
        "counter set s has no counters"
    );
    assert_eq!(
        err(CounterSet::builder("s")
            .counter("a", CounterType::Raw, Unit::None, "")
            .counter("a", CounterType::Raw, Unit::None, "")),
        "counter a is listed twice in set s"
    );
    assert_eq!(
        err(CounterSet::builder("s").counter("instance", CounterType::Raw, Unit::None, "")),
        "counter name \"instance\" in set s is reserved for the instance key"
    );
}

/// A writer adds and removes instances as fast as it can while a reader reads: every read
/// is consistent (names whole, values belonging to the named instance).
#[test]
fn instances_change_while_a_reader_reads() {
    let dir = tempfile::tempdir().unwrap();
    let set = CounterSet::builder("churn")
        .counter("id", CounterType::Raw, Unit::None, "")
        .instances(8)
        .create_in(dir.path())
        .unwrap();
    let file = CounterFile::open(set.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (set, stop) = (set.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                let name = format!("instance-{n:08}");
                let i = set.instance(&name).unwrap();
                i.counter("id").unwrap().set(n);
                n += 1;
                if n.is_multiple_of(64) {
                    // A busy publisher, not one that changes its table without pause.
                    // (A yield is not a pause when the reader runs on the other core:
                    // under a loaded test run the reader could starve.)
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
            }
            n
        })
    };
    let mut reads = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        for i in file.snapshot().unwrap().instances {
            let n: u64 = i.name["instance-".len()..].parse().unwrap();
            // The value is 0 (not yet set) or the instance's own number.
            assert!(i.values[0] == 0 || i.values[0] == n, "{i:?}");
            assert_eq!(i.name.len(), "instance-".len() + 8);
        }
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(
        reads > 10 && written > 10,
        "reads {reads}, instances {written}"
    );
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A table of hostile files and the exact errors they get.
/// A file whose generation stays odd (a publisher stopped mid-update, or made so) held
/// every read for the whole retry bound (about 0.6 s; the fuzzer found it). It is refused
/// once the same odd generation has lasted a few milliseconds.
#[test]
fn a_generation_stuck_odd_held_every_read() {
    let dir = tempfile::tempdir().unwrap();
    let set = all_types(dir.path());
    let reader = CounterFile::open(set.path()).unwrap();
    assert!(reader.snapshot().is_ok());
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(set.path())
            .unwrap();
        file.write_at(&7u64.to_le_bytes(), header::GENERATION as u64)
            .unwrap();
    }
    let started = std::time::Instant::now();
    let err = reader.snapshot().unwrap_err();
    assert!(err.problem.contains("in the middle of an update"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn hostile_files_get_exact_errors() {
    let dir = tempfile::tempdir().unwrap();
    let set = all_types(dir.path());
    let good = std::fs::read(set.path()).unwrap();
    let len = good.len();
    let counters_at =
        u32::from_le_bytes(good[header::COUNTERS_OFFSET..][..4].try_into().unwrap()) as usize;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "empty",
            Box::new(|b| b.clear()),
            "truncated: 0 bytes, shorter than the 128-byte header".into(),
        ),
        (
            "truncated",
            Box::new(|b| b.truncate(200)),
            format!("the header says {len} bytes but the file has 200"),
        ),
        (
            "magic",
            Box::new(|b| b[0] = b'X'),
            "not a counter file (its first 8 bytes are not the counter-file magic number)".into(),
        ),
        (
            "version",
            Box::new(|b| put32(b, header::VERSION, 9)),
            "format version 9; this reader reads version 1".into(),
        ),
        (
            "strings",
            Box::new(|b| put32(b, header::STRINGS_SIZE, 1 << 30)),
            format!(
                "the string area (1073741824 bytes at offset 128) lies outside the file's {len} bytes after the header"
            ),
        ),
        (
            "name",
            Box::new(|b| put32(b, header::NAME_LEN, 500)),
            "the set's name is 500 bytes, longer than 64".into(),
        ),
        (
            "counter count",
            Box::new(|b| put32(b, header::COUNTER_COUNT, 0)),
            "0 counters (allowed: 1 to 65536)".into(),
        ),
        (
            "stride",
            Box::new(|b| put32(b, header::SLOTS_PER_INSTANCE, 7)),
            "7 slots per instance (expected a multiple of 8, at most 131072)".into(),
        ),
        (
            "kind",
            Box::new(move |b| b[counters_at + format::counter::KIND] = 99),
            "counter queue has unknown type 99".into(),
        ),
        (
            "slot",
            Box::new(move |b| put32(b, counters_at + format::counter::SLOT, 8)),
            "counter queue uses slot 8, past the 8 slots of an instance".into(),
        ),
        (
            "capacity",
            Box::new(|b| put32(b, header::INSTANCE_CAPACITY, 5)),
            "instance capacity 5 (allowed: 1 to 1048576, and 1 for a set without instances)".into(),
        ),
        (
            "values",
            Box::new(|b| put32(b, header::VALUES_OFFSET, 1 << 20)),
            format!(
                "the value area (64 bytes at offset 1048576) lies outside the file's {len} bytes after the header"
            ),
        ),
        (
            "utf8",
            Box::new(|b| b[128] = 0xff),
            "the set's name is not valid UTF-8".into(),
        ),
    ];
    for (what, edit, expected) in cases {
        let mut bytes = good.clone();
        edit(&mut bytes);
        let path = dir
            .path()
            .join(format!("{}.counters", what.replace(' ', "_")));
        std::fs::write(&path, &bytes).unwrap();
        let e = CounterFile::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert_eq!(e.problem, expected, "{what}");
        assert!(
            e.to_string()
                .starts_with(&format!("counter file {}: ", path.display()))
        );
    }
}

/// Random corruption of a valid file never panics the reader: it opens and reads, or it
/// says what is wrong.
#[test]
fn fuzzed_files_never_panic_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let set = CounterSet::builder("fuzz")
        .counter("a", CounterType::Counter, Unit::Count, "help")
        .counter("b", CounterType::Average, Unit::Bytes, "")
        .instances(4)
        .create_in(dir.path())
        .unwrap();
    let keep = set.instance("one").unwrap();
    let good = std::fs::read(set.path()).unwrap();
    drop(keep);
    let path = dir.path().join("victim.counters");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut opened, mut refused) = (0, 0);
    for _ in 0..5000 {
        let mut bytes = good.clone();
        for _ in 0..(next() % 8 + 1) {
            let at = (next() % bytes.len() as u64) as usize;
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => bytes[at] ^= 1 << (next() % 8),
                _ => {
                    // A field-sized write of a tempting value.
                    let v = [0u32, 1, 0xffff_ffff, 128, 4096, 0x8000_0000][(next() % 6) as usize];
                    let at = at & !3;
                    if at + 4 <= bytes.len() {
                        put32(&mut bytes, at, v);
                    }
                }
            }
        }
        if next() % 10 == 0 {
            bytes.truncate((next() % bytes.len() as u64) as usize);
        }
        std::fs::write(&path, &bytes).unwrap();
        match CounterFile::open(&path) {
            Ok(file) => {
                let _ = file.snapshot();
                opened += 1;
            }
            Err(e) => {
                assert!(!e.problem.is_empty());
                refused += 1;
            }
        }
    }
    assert!(
        opened > 0 && refused > 0,
        "opened {opened}, refused {refused}"
    );
}
